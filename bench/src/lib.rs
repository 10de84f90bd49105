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
