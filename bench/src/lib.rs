//! Shared inputs for the criterion benches in `benches/`.

use bulwark::smtp::{EnvelopePolicy, RcptVerdict, SessionConfig};

/// Accepts every recipient: the benches measure the protocol, not policy.
pub struct AcceptAll;

impl EnvelopePolicy for AcceptAll {
    fn check_rcpt(&self, _sender: &str, _rcpt: &str) -> RcptVerdict {
        RcptVerdict::Accept
    }
}

pub fn session_config() -> SessionConfig {
    SessionConfig {
        hostname: "mx.bench.test".into(),
        max_message_size: 64 << 20,
        max_recipients: 1000,
        max_errors: 1000,
        starttls: false,
        max_line_length: bulwark::smtp::data::MAX_TEXT_LINE,
    }
}

/// A message of about `size` octets: headers, then 76-octet lines, some starting with
/// a dot (so unstuffing is exercised), framed for DATA (stuffed, with the terminator).
pub fn data_payload(size: usize) -> Vec<u8> {
    let mut out =
        b"From: <a@bench.test>\r\nTo: <b@example.test>\r\nSubject: bench\r\n\r\n".to_vec();
    let mut i = 0u32;
    while out.len() < size {
        if i.is_multiple_of(17) {
            out.extend_from_slice(b"..");
        }
        out.extend_from_slice(
            b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tem\r\n",
        );
        i += 1;
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// One whole pipelined transaction as a client sends it.
pub fn transaction(size: usize) -> Vec<u8> {
    let mut t =
        b"MAIL FROM:<sender@bench.test> SIZE=4096\r\nRCPT TO:<user@example.test>\r\nDATA\r\n"
            .to_vec();
    t.extend_from_slice(&data_payload(size));
    t
}

/// A temporary directory for spool benches, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("bulwark-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create bench dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Inputs for the inspection benches: rule sets and messages built from the labelled
/// corpus beside the repository (`../shared/corpus/train`), read, never copied.
pub mod inspection {
    use std::path::{Path, PathBuf};

    use bulwark_inspect::corpus;
    use bulwark_inspect::inspector::{Inspector, Settings};

    pub fn corpus_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/train")
    }

    /// Where compiled rule sets are cached between runs.
    pub fn cache_dir() -> PathBuf {
        let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-rules-cache");
        let _ = std::fs::create_dir_all(&d);
        d
    }

    /// Built-in rules only.
    pub fn builtin() -> Inspector {
        Inspector::load(&[], None, Some(&cache_dir()), Settings::default()).expect("built-in")
    }

    /// Built-in plus Debian's stock SpamAssassin rules (compiled once, then cached).
    pub fn spamassassin() -> Inspector {
        Inspector::load(
            &[PathBuf::from("/usr/share/spamassassin")],
            None,
            Some(&cache_dir()),
            Settings::default(),
        )
        .expect("SpamAssassin's rules (apt install spamassassin)")
    }

    /// `n` literal-heavy body rules of our own, as a Bulwark rule file: two-word phrases
    /// taken from the spam corpus, case-insensitive, one in five with a bounded gap.
    pub fn own_rules_file(n: usize) -> PathBuf {
        let mut words: Vec<String> = Vec::new();
        corpus::for_each_message(&corpus_dir().join("spam"), |m| {
            let text = String::from_utf8_lossy(m);
            for w in text.split(|c: char| !c.is_ascii_alphabetic()) {
                if (5..12).contains(&w.len()) && words.len() < 200_000 {
                    words.push(w.to_ascii_lowercase());
                }
            }
        })
        .expect("corpus");
        words.sort();
        words.dedup();
        let mut toml = String::new();
        for i in 0..n {
            let a = &words[(i * 7919) % words.len()];
            let b = &words[(i * 104_729 + 13) % words.len()];
            let pattern = if i % 5 == 0 {
                format!("\\b{a}\\W{{1,20}}{b}\\b")
            } else {
                format!("{a} {b}")
            };
            toml.push_str(&format!(
                "[[rule]]\nname = \"OWN_{}\"\nclass = \"body\"\npattern = '{pattern}'\nflags = \"i\"\nscore = 0.1\n\n",
                i + 1
            ));
        }
        let path = cache_dir().join(format!("own-{n}.toml"));
        std::fs::write(&path, toml).expect("write rules");
        path
    }

    /// Built-in plus `n` literal-heavy body rules of our own ([`own_rules_file`]).
    pub fn own_rules(n: usize) -> Inspector {
        let path = own_rules_file(n);
        Inspector::load(&[path], None, Some(&cache_dir()), Settings::default()).expect("own rules")
    }

    /// The `n` rules of [`own_rules_file`] alone, compiled without the built-in ones.
    pub fn own_rules_alone(n: usize) -> bulwark_inspect::compiled::Compiled {
        let path = own_rules_file(n);
        let text = std::fs::read_to_string(&path).expect("rules");
        let set = bulwark_inspect::rules::parse_toml(&text, "own.toml").expect("parses");
        bulwark_inspect::compiled::Compiled::compile(&set).expect("compiles")
    }

    /// A plain-text message of about `size` octets: a ham header, then the text of
    /// corpus messages (ham and spam, their header sections dropped) one after another.
    pub fn text_message(size: usize) -> Vec<u8> {
        let mut out = b"From: Alice <alice@example.org>\r\nTo: bob@example.test\r\nSubject: the quarterly report\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\nMessage-ID: <bench@example.org>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n".to_vec();
        let mut bodies: Vec<Vec<u8>> = Vec::new();
        for class in ["ham", "spam"] {
            corpus::for_each_message(&corpus_dir().join(class), |m| {
                if bodies.len() < 4000
                    && let Some(p) = m.windows(2).position(|w| w == b"\n\n")
                {
                    let body = &m[p + 2..];
                    if !body.windows(2).any(|w| w == b"<h" || w == b"<H") {
                        bodies.push(body.to_vec());
                    }
                }
            })
            .expect("corpus");
        }
        let mut i = 0;
        while out.len() < size {
            let b = &bodies[i % bodies.len()];
            for line in b.split(|&c| c == b'\n') {
                out.extend_from_slice(line.strip_suffix(b"\r").unwrap_or(line));
                out.extend_from_slice(b"\r\n");
                if out.len() >= size {
                    break;
                }
            }
            i += 1;
        }
        out
    }
}
